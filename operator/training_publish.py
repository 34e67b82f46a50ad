"""Publishing a trained adapter: the job's output LoRAAdapter created, or moved to the new revision.

Workers then swap to the revision as for any LoRAAdapter whose source changed.
A LoRAAdapter of that name that belongs to another base model is never
touched: the job fails instead (`training_status.output_conflict` says why).
"""

from __future__ import annotations

from typing import Any, cast

import kopf
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from loraplex.api import GROUP, LORA_ADAPTERS, VERSION
from loraplex.api.trainingjob import TrainingJobSpec
from loraplex.operator import metrics
from loraplex.operator.training_status import output_conflict
from loraplex.operator.training_workload import Store, output_adapter


class AdapterPublisher:
    """Reads and writes TrainingJobs' output LoRAAdapters."""

    def __init__(self, custom: client.CustomObjectsApi, store: Store) -> None:
        self.custom = custom
        self.store = store

    def output_adapter(self, namespace: str, spec: TrainingJobSpec) -> dict[str, Any] | None:
        """The job's output LoRAAdapter as it is now; None when there is none."""
        name = spec.output.adapter_name
        try:
            return cast(
                dict[str, Any],
                self.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, LORA_ADAPTERS, name),
            )
        except ApiException as error:
            if error.status != 404:
                raise
            return None

    def publish(
        self, namespace: str, job_name: str, spec: TrainingJobSpec, uri: str, sha256: str, logger: kopf.Logger
    ) -> tuple[str, str] | None:
        """Create or update the output LoRAAdapter with the revision the trainer wrote at `uri`.
        (reason, message) when it may not: the LoRAAdapter of that name belongs to another base model."""
        name = spec.output.adapter_name
        public = self.store.public(uri)
        live = self.output_adapter(namespace, spec)
        if live is None:
            wanted = output_adapter(namespace, spec, public, sha256, job_name)
            self.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, LORA_ADAPTERS, wanted)
            metrics.API_WRITES.labels("LoRAAdapter", "create").inc()
            logger.info(f"Created adapter {namespace}/{name} from training job {job_name} sha256={sha256}")
            return None
        conflict = output_conflict(spec, live, f"{public} (sha256 {sha256})")
        if conflict is not None:
            return conflict
        source = live["spec"].get("source") or {}
        if source.get("sha256") == sha256 and source.get("uri") == public:
            return None
        self.custom.patch_namespaced_custom_object(
            GROUP, VERSION, namespace, LORA_ADAPTERS, name,
            {"spec": {"source": {"uri": public, "sha256": sha256}, "rank": spec.lora.rank}},
        )  # fmt: skip
        metrics.API_WRITES.labels("LoRAAdapter", "patch").inc()
        logger.info(f"Updated adapter {namespace}/{name} to a new revision from {job_name} sha256={sha256}")
        return None
