"""asrflow pipelines: the KFP DAG, GKE placement, the local runner and the CLI."""
