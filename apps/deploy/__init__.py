"""`edgespool device` / `edgespool deploy`: ship bundles to boards over ssh (see docs/DEPLOY.md).

registry.py (named devices, known_hosts), ssh_session.py (OpenSSH client + framed pipe), board_agent.py (the
stdlib-only program that runs on the board), chunk_plan.py (content-addressed chunks), preflight.py (fit checks),
deploy.py (the flow: deploy, rollback, run, bench), cluster_deploy.py (`deploy --cluster`: each board its share),
cluster_run.py (`run --cluster DEVICES` over the deployed shares)."""
