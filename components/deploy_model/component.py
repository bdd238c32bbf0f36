"""Roll the promoted version out as the KServe InferenceService (the last, cluster-only step).

The registry's ``champion`` alias moves to the version only once the InferenceService serves it
(``garbage.release``); a failed rollout leaves the previous champion serving. The pod runs under
the run's service account (``garbage-pipeline``, see ``manifests/base/rbac``), which may read,
create and patch InferenceServices in the serving namespace and nothing else.
"""

from components.image import component


@component
def deploy_model(
    config_json: str,
    version: str,
    promoted: bool,
    name: str,
    namespace: str,
    artifacts_destination: str,
    canary_percent: int = 0,
    timeout_s: int = 600,
) -> str:
    """Point the InferenceService at the gate's challenger; make it champion once it is Ready.

    Does nothing when the gate did not promote the candidate. A new revision that does not become
    Ready within ``timeout_s`` is rolled back (the previous model keeps serving, and stays
    champion) and the step fails.

    Args:
        config_json: The run config (the MLflow tracking server, model name and aliases).
        version: The registered version the gate passed.
        promoted: The gate's verdict; False skips the deploy.
        name: InferenceService name (also the model name on the wire); the pipeline passes
            ``garbage.core.names.MODEL_NAME``.
        namespace: Serving namespace (``garbage.deploy.DEFAULT_NAMESPACE``).
        canary_percent: 1-99 sends that share of traffic to the new revision (Serverless mode
            only); 0 rolls it out fully.
        timeout_s: Seconds to wait for Ready.
        artifacts_destination: The MLflow server's artifact bucket, to map proxied artifact URIs
            (``garbage.deploy.ARTIFACTS_DESTINATION``).

    Returns:
        The storage URI now served, or "" when nothing was deployed.
    """
    from garbage.core.config import Config
    from garbage.release import release

    if not promoted:
        print("candidate not promoted; the serving model stays as it is")
        return ""
    result = release(
        Config.model_validate_json(config_json),
        version,
        name=name,
        namespace=namespace,
        canary_percent=canary_percent or None,
        timeout_s=timeout_s,
        artifacts_destination=artifacts_destination or None,
    )
    print(result.summary())
    return result.storage_uri
