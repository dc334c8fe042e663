"""What a running server really uses: NVML's readings (nvml.py), reconciled with the plan (reconcile.py), the
`hybrid-alloc verify` command (verify.py) and `hybrid-alloc validate` (validate.py: its arguments and dry run;
launch.py: the two `vllm serve` launches; runner.py: the real run, with server.py, load.py and report.py)."""
