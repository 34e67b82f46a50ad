"""`helm test`: the operator answers on its metrics Service, and the API server serves loraplex's CRDs.

Run by the chart's test pod (templates/tests/check.yaml) with the operator's own image, so it needs
nothing beyond the kubernetes client loraplex ships with. Exits non-zero, saying what failed.
Environment: LORAPLEX_METRICS_URL (the operator's /metrics) and LORAPLEX_RESOURCES, a comma-separated
list of plural.group/version (basemodels.loraplex.dev/v1alpha1,...).
Outside a cluster (the chart's tests run it against a local control plane) it reads $KUBECONFIG.
"""

import os
import sys
import urllib.request

from kubernetes import client, config


def operator_answers(url: str) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=10) as answer:
            body = answer.read().decode()
    except OSError as error:
        return f"the operator does not answer at {url}: {error}"
    if 'loraplex_build_info{component="operator"' not in body:
        return f"{url} answers, but not with the loraplex operator's metrics"
    return None


def served(resource: str) -> str | None:
    name, _, version = resource.partition("/")
    plural, _, group = name.partition(".")
    try:
        resources = client.CustomObjectsApi().get_api_resources(group, version)
    except client.ApiException as error:
        return f"the API server serves no {group}/{version} ({error.status} {error.reason})"
    if plural not in {r.name for r in resources.resources}:
        return f"the API server serves no {plural} in {group}/{version}"
    try:
        client.CustomObjectsApi().list_cluster_custom_object(group, version, plural, limit=1)
    except client.ApiException as error:
        return f"listing {resource} failed ({error.status} {error.reason})"
    return None


def main() -> int:
    if os.environ.get("KUBERNETES_SERVICE_HOST"):
        config.load_incluster_config()
    else:
        config.load_kube_config()
    problems = [operator_answers(os.environ["LORAPLEX_METRICS_URL"])]
    problems += [served(r) for r in os.environ["LORAPLEX_RESOURCES"].split(",") if r]
    failed = [p for p in problems if p]
    for problem in failed:
        print(f"FAIL: {problem}", file=sys.stderr)
    if not failed:
        print("ok: the operator answers and the loraplex CRDs are served")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
