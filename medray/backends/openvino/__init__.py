"""OpenVINO backend (CPU): fp32 / bf16 / fp16 hints on an fp32 IR, int8 via NNCF."""
