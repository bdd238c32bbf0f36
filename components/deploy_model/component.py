"""Publish the promoted model as the KServe InferenceService (the last, cluster-only step).

The pod runs under the run's service account (``garbage-pipeline``, see ``manifests/base/rbac``),
which may read, create and patch InferenceServices in the serving namespace and nothing else.
"""

from components.image import component


@component
def deploy_model(
    config_json: str,
    model_uri: str,
    promoted: bool,
    name: str,
    namespace: str,
    artifacts_destination: str,
    canary_percent: int = 0,
    timeout_s: int = 600,
) -> str:
    """Point the InferenceService at the new champion and wait until it is Ready.

    Does nothing when the gate did not promote the candidate. A new revision that does not become
    Ready within ``timeout_s`` is rolled back (the previous model keeps serving) and the step fails.

    Args:
        config_json: The run config (for the MLflow tracking server).
        model_uri: The registered model's URI (``models:/...``) or its storage URI (``s3://...``).
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
    from garbage.deploy import publish_model

    if not promoted:
        print("candidate not promoted; the serving model stays as it is")
        return ""
    config = Config.model_validate_json(config_json)
    result = publish_model(
        model_uri,
        name=name,
        namespace=namespace,
        canary_percent=canary_percent or None,
        timeout_s=timeout_s,
        tracking_uri=config.mlflow_tracking_uri,
        artifacts_destination=artifacts_destination or None,
    )
    print(result.summary())
    return result.storage_uri
