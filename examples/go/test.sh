#!/usr/bin/env bash
# Builds and tests the Go example against a real vowd ($VOWD, default
# target/debug/vowd): installs Debian's Go packages when missing, generates the
# stubs from proto/, then runs gofmt, go vet and go test.
#
# Debian packages grpc-go and protobuf-go for GOPATH mode (no module proxy
# needed), so the build uses a GOPATH under target/go-example/:
#   src/example.com/vow          -> examples/go (a symlink: edit in place)
#   src/example.com/vowgen/...   generated stubs, never committed
set -euo pipefail
# Absolute before the cd: the tests run in each package's directory.
VOWD=$(realpath -m "${VOWD:-$(dirname "${BASH_SOURCE[0]}")/../../target/debug/vowd}")
if [[ ! -x $VOWD ]]; then
  echo "no vowd at $VOWD: set VOWD to a vowd binary (cargo build --bin vowd)" >&2
  exit 1
fi
export VOWD
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
readonly ROOT=$PWD

readonly PACKAGES=(golang-go golang-google-grpc-dev golang-github-golang-protobuf-1-5-dev
  golang-google-genproto-dev protoc-gen-go protoc-gen-go-grpc protobuf-compiler)
missing=()
for package in "${PACKAGES[@]}"; do
  dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package")
done
if ((${#missing[@]})); then
  sudo=()
  ((EUID == 0)) || sudo=(sudo)
  # Update the lists only when the install cannot find a package without it.
  if ! "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"; then
    "${sudo[@]}" apt-get update -qq
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
  fi
fi

readonly GOPATH_DIR="${CARGO_TARGET_DIR:-$ROOT/target}/go-example"
export GO111MODULE=off GOPATH="$GOPATH_DIR:/usr/share/gocode" GOFLAGS=
readonly GENERATED="$GOPATH_DIR/src/example.com/vowgen"
readonly PACKAGE_DIR="$GOPATH_DIR/src/example.com/vow"
mkdir -p "$GOPATH_DIR/src/example.com"
ln -sfn "$ROOT/examples/go" "$PACKAGE_DIR"

# The protos carry no go_package: M options name the Go package of each file.
# google/rpc/status.proto maps to genproto's, the Status type grpc-go's status
# package reads and writes.
readonly GO_PACKAGE=example.com/vowgen/vow/v1
mappings=(Mgoogle/rpc/status.proto=google.golang.org/genproto/googleapis/rpc/status)
for proto in proto/vow/v1/*.proto; do
  mappings+=("M${proto#proto/}=$GO_PACKAGE;vowv1")
done
rm -rf "$GENERATED"
mkdir -p "$GENERATED"
join() { local IFS=,; echo "$*"; }
protoc -I proto -I /usr/include \
  --go_out="$GENERATED" --go_opt=module=example.com/vowgen --go_opt="$(join "${mappings[@]}")" \
  --go-grpc_out="$GENERATED" --go-grpc_opt=module=example.com/vowgen --go-grpc_opt="$(join "${mappings[@]}")" \
  proto/vow/v1/*.proto

cd "$PACKAGE_DIR"
go version
unformatted=$(gofmt -l client worker internal cmd)
if [[ -n $unformatted ]]; then
  echo "not gofmt-clean:" "$unformatted" >&2
  exit 1
fi
readonly PACKAGES_GO=(example.com/vow/client example.com/vow/worker example.com/vow/internal/vowdtest
  example.com/vow/cmd/submit example.com/vow/cmd/worker)
go vet "${PACKAGES_GO[@]}"
go test -count=1 "$@" "${PACKAGES_GO[@]}"
