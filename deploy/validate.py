"""Validates what scripts/check-deploy renders from deploy/, and the gRPC service config.

    python deploy/validate.py manifests RENDERED.yaml... [--service-config FILE] [--proto-dir proto] [--quiet]
    python deploy/validate.py service-config FILE [--proto-dir proto] [--quiet]
    python deploy/validate.py extract-crd CRD.yaml --source TEXT   # refreshes deploy/crd-schemas/

Kubernetes kinds are checked by kubernetes-validate with its strict schemas
(unknown fields are errors) against every version in KUBERNETES_VERSIONS. That
tool knows no custom resources (for a kind it has no schema for, it only warns
and exits 0), so custom resources are checked here against the OpenAPI schemas
of their CRDs, vendored in deploy/crd-schemas/ and made strict the same way
(an object that lists its properties admits no other, unless the CRD marks it
x-kubernetes-preserve-unknown-fields); their metadata gets the strict
ObjectMeta schema. A kind with neither schema is an error: adding a custom kind
means vendoring its CRD's schema with extract-crd, never a fallback. CEL rules
(x-kubernetes-validations) are not evaluated.

Exit status: 0 when everything passed, 1 when anything failed.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import jsonschema
import kubernetes_validate
import yaml
from kubernetes_validate.utils import SchemaNotFoundError, ValidationError

# The oldest Kubernetes the manifests support (the native preStop sleep
# action is on by default from 1.30) and the newest kubernetes-validate knows.
KUBERNETES_VERSIONS = ("1.30.0", kubernetes_validate.utils.latest_version())

# Vendored CRD schemas, one file per served version: {"source": ..., "schema": openAPIV3Schema}.
CRD_SCHEMA_DIR = Path(__file__).parent / "crd-schemas"
# The custom kinds the manifests use, and only those, are extracted from CRDs.
CUSTOM_KINDS = {
    ("networking.istio.io", "v1", "DestinationRule"),
    ("networking.istio.io", "v1", "VirtualService"),
    ("keda.sh", "v1alpha1", "ScaledObject"),
    ("gateway.networking.k8s.io", "v1", "GRPCRoute"),
}


def crd_schema_path(api_version: str, kind: str) -> Path:
    group, _, version = api_version.rpartition("/")
    return CRD_SCHEMA_DIR / f"{group}_{version}_{kind.lower()}.json"


def strict_schema(schema: object) -> object:
    """An OpenAPI v3 structural schema of a CRD as strict JSON Schema (draft 4, which shares its keywords)."""
    if not isinstance(schema, dict):
        return schema
    result: dict = {}
    for key, value in schema.items():
        if key in ("properties", "patternProperties"):
            # Field names, not keywords: a field may well be called `description`.
            result[key] = {name: strict_schema(field) for name, field in value.items()}
        elif key in ("items", "additionalProperties", "not") and isinstance(value, dict):
            result[key] = strict_schema(value)
        elif key in ("allOf", "anyOf", "oneOf"):
            result[key] = [strict_schema(branch) for branch in value]
        elif key not in ("description", "x-kubernetes-validations"):
            result[key] = value  # enum, default, pattern, …: values, kept as they are
    if result.pop("x-kubernetes-int-or-string", False):
        result.pop("type", None)
        result.setdefault("anyOf", [{"type": "integer"}, {"type": "string"}])
    if result.pop("nullable", False) and "type" in result:
        result["type"] = [result["type"], "null"]
    preserve = result.pop("x-kubernetes-preserve-unknown-fields", False)
    if "properties" in result and "additionalProperties" not in result and not preserve:
        result["additionalProperties"] = False
    return result


def extract_crd(path: Path, source: str) -> int:
    """Writes the schema of every served version of the CUSTOM_KINDS found in a CRD file."""
    written = 0
    for document in yaml.safe_load_all(path.read_text()):
        if not document or document.get("kind") != "CustomResourceDefinition":
            continue
        group, kind = document["spec"]["group"], document["spec"]["names"]["kind"]
        for version in document["spec"]["versions"]:
            if (group, version["name"], kind) not in CUSTOM_KINDS:
                continue
            target = crd_schema_path(f"{group}/{version['name']}", kind)
            schema = version["schema"]["openAPIV3Schema"]
            target.write_text(json.dumps({"source": source, "schema": schema}, separators=(",", ":")) + "\n")
            print(f"wrote {target} from {source}")
            written += 1
    return 0 if written else 1


GRPC_CODES = {
    "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
    "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
    "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS",
    "UNAUTHENTICATED",
}
# Never retried by a static policy: a repeated Submit or Run creates a second
# task unless the caller set an idempotency key, which a static config cannot
# know; a repeated Poll strands the leases of the lost reply until they expire.
NEVER_RETRIED = {
    ("vow.v1.TaskService", "Submit"),
    ("vow.v1.TaskService", "Run"),
    ("vow.v1.WorkerService", "Poll"),
}
# Whatever else vowd adds to the drain after --drain-timeout: CONNECTION_GRACE
# in server/src/lib.rs.
CONNECTION_GRACE_SECONDS = 5


class Report:
    def __init__(self, quiet: bool = False) -> None:
        self.failures: list[str] = []
        self.passes = 0
        self.quiet = quiet

    def fail(self, where: str, message: str) -> None:
        self.failures.append(f"{where}: {message}")
        print(f"FAIL {where}: {message}")

    def ok(self, where: str, message: str) -> None:
        self.passes += 1
        if not self.quiet:
            print(f"ok   {where}: {message}")


def parse_duration(text: str) -> float:
    """Seconds of a humantime duration as vowd's flags take them ("5s", "1m 30s", "250ms")."""
    units = {"ms": 0.001, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600}
    total, rest = 0.0, text.replace(" ", "")
    for number, unit in re.findall(r"(\d+(?:\.\d+)?)([a-z]+)", rest):
        if unit not in units:
            raise ValueError(f"unknown unit in duration {text!r}")
        total += float(number) * units[unit]
    if not re.fullmatch(r"(\d+(\.\d+)?[a-z]+)+", rest):
        raise ValueError(f"not a duration: {text!r}")
    return total


def proto_methods(proto_dir: Path) -> dict[str, set[str]]:
    """Fully qualified service name -> its RPC names, read from proto/ (no protoc needed)."""
    services: dict[str, set[str]] = {}
    for path in sorted(proto_dir.rglob("*.proto")):
        text = re.sub(r"//[^\n]*", "", path.read_text())
        package = re.search(r"^\s*package\s+([\w.]+)\s*;", text, re.M)
        prefix = f"{package.group(1)}." if package else ""
        for match in re.finditer(r"\bservice\s+(\w+)\s*\{", text):
            depth, end = 1, match.end()
            while depth and end < len(text):
                depth += {"{": 1, "}": -1}.get(text[end], 0)
                end += 1
            body = text[match.end():end]
            services[prefix + match.group(1)] = set(re.findall(r"\brpc\s+(\w+)\s*\(", body))
    return services


def retried_methods(config: dict) -> set[tuple[str, str]]:
    return {
        (name["service"], name.get("method", ""))
        for entry in config.get("methodConfig", [])
        if "retryPolicy" in entry
        for name in entry.get("name", [])
    }


def check_service_config(path: Path, proto_dir: Path, report: Report) -> dict | None:
    where = str(path)
    try:
        config = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        report.fail(where, f"not valid JSON: {error}")
        return None
    services = proto_methods(proto_dir)
    if not services:
        report.fail(where, f"no services found under {proto_dir}")
        return None
    failures = len(report.failures)
    seen: set[tuple[str, str]] = set()
    for index, entry in enumerate(config.get("methodConfig", [])):
        here = f"{where} methodConfig[{index}]"
        unknown = set(entry) - {"name", "waitForReady", "timeout", "retryPolicy",
                                "hedgingPolicy", "maxRequestMessageBytes",
                                "maxResponseMessageBytes"}
        if unknown:
            report.fail(here, f"unknown fields {sorted(unknown)}")
        if not entry.get("name"):
            report.fail(here, "needs at least one name")
        for name in entry.get("name", []):
            service, method = name.get("service", ""), name.get("method", "")
            if (service, method) in seen:
                # gRPC rejects the whole service config on a duplicate name.
                report.fail(here, f"{service}/{method} named twice")
            seen.add((service, method))
            if service not in services:
                report.fail(here, f"no service {service!r} in {proto_dir} (has {sorted(services)})")
            elif method and method not in services[service]:
                report.fail(here, f"no method {method!r} in {service} (has {sorted(services[service])})")
        if "waitForReady" in entry and not isinstance(entry["waitForReady"], bool):
            report.fail(here, "waitForReady must be true or false")
        policy = entry.get("retryPolicy")
        if policy is None:
            continue
        for name in entry.get("name", []):
            service, method = name.get("service", ""), name.get("method", "")
            if not method and any(never[0] == service for never in NEVER_RETRIED):
                report.fail(here, f"retries every method of {service}, Submit/Run/Poll among them")
            if (service, method) in NEVER_RETRIED:
                report.fail(here, f"retries {service}/{method}, which is not safe to repeat")
        missing = {"maxAttempts", "initialBackoff", "maxBackoff", "backoffMultiplier",
                   "retryableStatusCodes"} - set(policy)
        if missing:
            report.fail(here, f"retryPolicy lacks {sorted(missing)}")
            continue
        if not isinstance(policy["maxAttempts"], int) or not 2 <= policy["maxAttempts"] <= 5:
            report.fail(here, "retryPolicy.maxAttempts must be an integer from 2 to 5 (gRPC caps it at 5)")
        for field in ("initialBackoff", "maxBackoff"):
            if not re.fullmatch(r"\d+(\.\d{1,9})?s", str(policy[field])):
                report.fail(here, f"retryPolicy.{field} must be a proto3 JSON duration such as \"0.2s\"")
        if not (isinstance(policy["backoffMultiplier"], (int, float)) and policy["backoffMultiplier"] > 0):
            report.fail(here, "retryPolicy.backoffMultiplier must be a positive number")
        codes = policy["retryableStatusCodes"]
        if not codes or any(code not in GRPC_CODES for code in codes):
            report.fail(here, f"retryPolicy.retryableStatusCodes must be gRPC code names, got {codes}")
    throttling = config.get("retryThrottling")
    if throttling is not None and not (
        isinstance(throttling.get("maxTokens"), (int, float)) and 0 < throttling["maxTokens"] <= 1000
        and isinstance(throttling.get("tokenRatio"), (int, float)) and throttling["tokenRatio"] > 0
    ):
        report.fail(where, "retryThrottling needs maxTokens in (0, 1000] and a positive tokenRatio")
    if len(report.failures) == failures:
        report.ok(where, f"{len(seen)} method names exist in proto/, {len(retried_methods(config))} retried, "
                         "none of Submit/Run/Poll")
    return config


def load_resources(path: Path) -> list[dict]:
    return [document for document in yaml.safe_load_all(path.read_text()) if document]


def check_custom(resource: dict, where: str, report: Report) -> None:
    path = crd_schema_path(resource["apiVersion"], resource["kind"])
    vendored = json.loads(path.read_text())
    schema = strict_schema(vendored["schema"])
    # Every object has these, whether its CRD lists them or not (Istio's do not).
    schema.setdefault("properties", {}).update(
        apiVersion={"type": "string"}, kind={"type": "string"}, metadata={"type": "object"})
    validator = jsonschema.Draft4Validator(schema)
    errors = sorted(validator.iter_errors(resource), key=lambda error: list(error.absolute_path))
    # The CRD says only `metadata: {type: object}`; the API server checks ObjectMeta itself.
    metadata_probe = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": resource.get("metadata")}
    try:
        for version in KUBERNETES_VERSIONS:
            kubernetes_validate.validate(metadata_probe, version, strict=True)
    except ValidationError as error:
        report.fail(where, f"metadata: {'.'.join(map(str, error.path))}: {error.message}")
        return
    if errors:
        for error in errors[:5]:
            report.fail(where, f"CRD schema: {'.'.join(map(str, error.absolute_path))}: {error.message}")
    else:
        report.ok(where, f"strict CRD schema ({vendored['source']})")


def check_schemas(resources: list[dict], source: str, report: Report) -> None:
    for resource in resources:
        kind, api_version = resource.get("kind"), resource.get("apiVersion")
        where = f"{source} {kind}/{resource.get('metadata', {}).get('name')}"
        if crd_schema_path(str(api_version), str(kind)).is_file():
            check_custom(resource, where, report)
            continue
        try:
            for version in KUBERNETES_VERSIONS:
                kubernetes_validate.validate(resource, version, strict=True)
        except ValidationError as error:
            path = ".".join(str(item) for item in error.path)
            report.fail(where, f"Kubernetes {error.version}: {path}: {error.message}")
        except SchemaNotFoundError:
            report.fail(where, f"no schema for {api_version} {kind}: a typo, or a custom resource "
                               "whose CRD schema is not in deploy/crd-schemas/ (see extract-crd)")
        else:
            report.ok(where, f"strict schema, Kubernetes {' and '.join(KUBERNETES_VERSIONS)}")


def by_kind(resources: list[dict], kind: str) -> list[dict]:
    return [resource for resource in resources if resource.get("kind") == kind]


def check_workloads(resources: list[dict], source: str, report: Report) -> None:
    """References resolve, probes are gRPC, and the grace period covers the whole shutdown."""
    config_maps = {r["metadata"]["name"]: r.get("data", {}) for r in by_kind(resources, "ConfigMap")}
    secrets = {r["metadata"]["name"] for r in by_kind(resources, "Secret")}
    workloads = by_kind(resources, "Deployment") + by_kind(resources, "StatefulSet")
    for workload in workloads:
        where = f"{source} {workload['kind']}/{workload['metadata']['name']}"
        pod = workload["spec"]["template"]["spec"]
        failures = len(report.failures)
        containers = {container["name"]: container for container in pod.get("containers", [])}
        vowd = containers.get("vowd")
        if vowd is None:
            report.fail(where, "no container named vowd")
            continue
        flags: dict[str, str] = {}
        for source_ref in vowd.get("envFrom", []):
            name = source_ref.get("configMapRef", {}).get("name")
            if name is not None and name not in config_maps:
                report.fail(where, f"envFrom names ConfigMap {name!r}, which is not rendered")
            flags.update(config_maps.get(name, {}))
        for variable in vowd.get("env", []):
            ref = variable.get("valueFrom", {}).get("secretKeyRef")
            if ref and ref["name"] not in secrets:
                report.fail(where, f"{variable['name']} names Secret {ref['name']!r}, which is not rendered")
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            if "grpc" not in vowd.get(probe, {}):
                report.fail(where, f"{probe} is not a native gRPC probe")
        if missing := {"VOW_SHUTDOWN_DELAY", "VOW_DRAIN_TIMEOUT"} - set(flags):
            # Explicit, so the grace period is checked against what vowd will use.
            report.fail(where, f"the flags ConfigMap must set {sorted(missing)}")
            continue
        try:
            delay = parse_duration(flags["VOW_SHUTDOWN_DELAY"])
            drain = parse_duration(flags["VOW_DRAIN_TIMEOUT"])
        except ValueError as error:
            report.fail(where, str(error))
            continue
        pre_stop = vowd.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
        needed = pre_stop + delay + drain + CONNECTION_GRACE_SECONDS
        grace = pod.get("terminationGracePeriodSeconds", 30)
        if grace <= needed:
            report.fail(where, f"terminationGracePeriodSeconds {grace} does not exceed preStop {pre_stop} "
                               f"+ shutdown delay {delay:g} + drain {drain:g} + connection grace "
                               f"{CONNECTION_GRACE_SECONDS} = {needed:g} s")
        if len(report.failures) == failures:
            report.ok(where, f"references resolve, gRPC probes, grace {grace} s > {needed:g} s of shutdown")


def route_methods_istio(route: dict) -> set[tuple[str, str]]:
    methods = set()
    for match in route.get("match", []):
        path = match.get("uri", {}).get("exact", "")
        if path.count("/") == 2:
            _, service, method = path.split("/")
            methods.add((service, method))
    return methods


def check_mesh(resources: list[dict], source: str, config: dict | None, report: Report) -> None:
    """Subsets exist, weights add up, and the mesh retries exactly what the service config does."""
    retried = retried_methods(config) if config else None
    rules = {r["metadata"]["name"]: r for r in by_kind(resources, "DestinationRule")}
    for service in by_kind(resources, "VirtualService"):
        where = f"{source} VirtualService/{service['metadata']['name']}"
        failures = len(report.failures)
        subsets = {
            (rule["spec"]["host"], subset["name"])
            for rule in rules.values() for subset in rule["spec"].get("subsets", [])
        }
        for route in service["spec"].get("http", []):
            destinations = route.get("route", [])
            if sum(d.get("weight", 100 if len(destinations) == 1 else 0) for d in destinations) != 100:
                report.fail(where, f"route {route.get('name')}: weights do not add up to 100")
            for destination in destinations:
                target = destination["destination"]
                if "subset" in target and (target["host"], target["subset"]) not in subsets:
                    report.fail(where, f"route {route.get('name')}: no subset {target['subset']} "
                                       f"of {target['host']} in any DestinationRule")
            methods = route_methods_istio(route)
            retry_on = route.get("retries", {}).get("retryOn", "")
            if methods and retried is not None and methods != retried:
                report.fail(where, f"route {route.get('name')} retries {sorted(methods ^ retried)} "
                                   "differently from the service config")
            if not methods and "unavailable" in retry_on.split(","):
                report.fail(where, f"route {route.get('name')} retries every method on unavailable, "
                                   "Submit and Run among them")
        if len(report.failures) == failures:
            report.ok(where, "subsets exist, weights add up to 100, retries match the service config")
    for route in by_kind(resources, "GRPCRoute"):
        where = f"{source} GRPCRoute/{route['metadata']['name']}"
        retries = "retry.linkerd.io/grpc" in route["metadata"].get("annotations", {})
        methods = {
            (match["method"]["service"], match["method"]["method"])
            for rule in route["spec"].get("rules", []) for match in rule.get("matches", [])
            if "method" in match
        }
        if retries and not methods:
            report.fail(where, "retries every method, Submit and Run among them")
        elif retries and retried is not None and methods != retried:
            report.fail(where, f"retries {sorted(methods ^ retried)} differently from the service config")
        else:
            report.ok(where, "retries match the service config" if retries else "no retries")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    manifests = commands.add_parser("manifests")
    manifests.add_argument("files", nargs="+", type=Path)
    manifests.add_argument("--service-config", type=Path)
    service_config = commands.add_parser("service-config")
    service_config.add_argument("file", type=Path)
    extract = commands.add_parser("extract-crd")
    extract.add_argument("file", type=Path)
    extract.add_argument("--source", required=True, help="where the CRD comes from: repository@tag:path")
    for command in (manifests, service_config):
        command.add_argument("--proto-dir", type=Path, default=Path("proto"))
        command.add_argument("--quiet", action="store_true", help="print failures and the summary only")
    arguments = parser.parse_args()
    if arguments.command == "extract-crd":
        return extract_crd(arguments.file, arguments.source)

    report = Report(quiet=arguments.quiet)
    if arguments.command == "service-config":
        check_service_config(arguments.file, arguments.proto_dir, report)
    else:
        config = None
        if arguments.service_config:
            config = check_service_config(arguments.service_config, arguments.proto_dir, report)
        for path in arguments.files:
            try:
                resources = load_resources(path)
            except (OSError, yaml.YAMLError) as error:
                report.fail(str(path), f"cannot read: {error}")
                continue
            if not resources:
                report.fail(str(path), "renders no resources")
                continue
            source = path.stem
            check_schemas(resources, source, report)
            check_workloads(resources, source, report)
            check_mesh(resources, source, config, report)
    print(f"validate: {report.passes} passed, {len(report.failures)} failed")
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
