#!/usr/bin/env python3
"""Checks that Hugging Face transformers loads what shoal exports, with the same numerics.

Needs python with torch + transformers (e.g. `python3 -m venv /tmp/hfvenv &&
/tmp/hfvenv/bin/pip install torch transformers safetensors`) and a built shoal
(`cargo build --release`). Not part of `cargo test`: CI has no PyTorch.

1. The PyTorch fixture model (saved by transformers) is imported into a shoal
   checkpoint and exported again; transformers loads the export and its logits on the
   fixture batch must equal the fixture's logits (shoal -> transformers, exactly).
2. A model trained by shoal (`--checkpoint`, e.g. runs/demo/checkpoints/latest's
   target) is exported; transformers loads it and greedy-decodes a prompt; shoal's
   `generate --temperature 0` must produce the same text.

Usage: check_transformers.py SHOAL_BIN FIXTURE_DIR [SHOAL_CHECKPOINT]
"""
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import GPT2LMHeadModel


def run(*args):
    return subprocess.run(args, check=True, capture_output=True, text=True).stdout


def main():
    shoal, fixture = sys.argv[1], Path(sys.argv[2])
    ckpt = sys.argv[3] if len(sys.argv) > 3 else None
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        run(shoal, "import", "--hf", str(fixture / "model"), "--out", str(tmp / "ckpt"))
        run(shoal, "export", "--checkpoint", str(tmp / "ckpt"), "--hf", str(tmp / "hf"))
        model = GPT2LMHeadModel.from_pretrained(tmp / "hf").eval()
        io = load_file(fixture / "io.safetensors")
        with torch.no_grad():
            logits = model(io["tokens"].long()).logits
        err = ((logits - io["logits"]).norm() / io["logits"].norm()).item()
        print(f"fixture re-exported by shoal, loaded by transformers: logits relative error {err:.2e}")
        assert err < 1e-6, err

        if ckpt:
            run(shoal, "export", "--checkpoint", ckpt, "--hf", str(tmp / "trained"))
            model = GPT2LMHeadModel.from_pretrained(tmp / "trained").eval()
            prompt = "12+34="
            ids = torch.tensor([list(prompt.encode())])
            with torch.no_grad():
                out = model.generate(ids, max_new_tokens=40, do_sample=False,
                                     pad_token_id=0, attention_mask=torch.ones_like(ids))
            hf_text = bytes(out[0].tolist()).decode()
            shoal_text = run(shoal, "generate", "--checkpoint", ckpt, "--prompt", prompt,
                             "--max-new-tokens", "40", "--temperature", "0").rstrip("\n")
            print(f"transformers greedy: {hf_text!r}")
            print(f"shoal greedy:        {shoal_text!r}")
            assert hf_text == shoal_text
    print("ok")


if __name__ == "__main__":
    main()
