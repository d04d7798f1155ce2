"""A Python worker of the remote kind `resize`: the five lines that matter are the
Worker, the decorator, the handler, and run() (python/README.md has the rest).

    vowd --remote-kind resize &
    python worker.py 127.0.0.1:50051
    vow submit resize '{"image": "cat.png", "width": 64}' --wait
"""

import sys

import vow

worker = vow.Worker(sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:50051")


@worker.handler("resize")
def resize(ctx: vow.Context) -> dict:
    ctx.progress(50, f"resizing {ctx.input['image']}")
    return {"image": ctx.input["image"], "width": ctx.input.get("width", 128)}


if __name__ == "__main__":
    worker.run()  # until SIGTERM or Ctrl-C: drains, then releases what is left
