#!/usr/bin/env python3
"""PyTorch baseline for shoal's GPU path: GPT-2 124M training throughput on one GPU.

GPT-2 small (12 layers, 12 heads, 768 channels, vocabulary 50257, tied LM head),
sequence length 1024, bf16 autocast, fused AdamW, random tokens; the batch is the
largest of --batch-sizes that fits. Prints tokens/s and model FLOP utilization
against the dense bf16 peak (989 TFLOP/s for the H200 SXM) for eager PyTorch and
then for torch.compile. FLOPs per token are shoal's `GptConfig::flops_per_token`:
6 * (12 L C^2 + V C) + 12 L T C.

Usage: torch_gpu_baseline.py [--seconds 60] [--peak-tflops 989]   (~60 s on an H200)
Needs a CUDA GPU and torch; not part of `cargo test`.
"""
import argparse
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

L, NH, C, V, T = 12, 12, 768, 50257, 1024


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.ln_1 = nn.LayerNorm(C)
        self.c_attn = nn.Linear(C, 3 * C)
        self.c_proj = nn.Linear(C, C)
        self.ln_2 = nn.LayerNorm(C)
        self.c_fc = nn.Linear(C, 4 * C)
        self.mlp_proj = nn.Linear(4 * C, C)

    def forward(self, x):
        b, t, _ = x.shape
        q, k, v = self.c_attn(self.ln_1(x)).split(C, dim=2)
        q, k, v = (z.view(b, t, NH, C // NH).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.c_proj(y.transpose(1, 2).contiguous().view(b, t, C))
        return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x)), approximate="tanh"))


class GPT(nn.Module):
    def __init__(self):
        super().__init__()
        self.wte = nn.Embedding(V, C)
        self.wpe = nn.Embedding(T, C)
        self.blocks = nn.ModuleList(Block() for _ in range(L))
        self.ln_f = nn.LayerNorm(C)
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.normal_(p, std=0.02)

    def forward(self, idx, targets):
        x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1], device=idx.device))
        for block in self.blocks:
            x = block(x)
        logits = F.linear(self.ln_f(x), self.wte.weight)
        return F.cross_entropy(logits.float().view(-1, V), targets.view(-1))


def flops_per_token():
    return 6.0 * (L * 12.0 * C * C + V * C) + 12.0 * L * T * C


def measure(model, opt, batch, seconds, label, peak):
    dev = "cuda"
    idx = torch.randint(0, V, (batch, T), device=dev)
    tgt = torch.randint(0, V, (batch, T), device=dev)

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(idx, tgt)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    start = time.time()
    for _ in range(3):  # warm-up (and compilation, for torch.compile)
        step()
    torch.cuda.synchronize()
    warmup = time.time() - start
    steps, start = 0, time.time()
    while time.time() - start < seconds or steps < 3:
        loss = step()
        steps += 1
    torch.cuda.synchronize()
    elapsed = time.time() - start
    tok_s = steps * batch * T / elapsed
    mfu = tok_s * flops_per_token() / (peak * 1e12)
    print(
        f"{label:<16} batch {batch:>3} x {T}: {1e3 * elapsed / steps:8.1f} ms/step  "
        f"{tok_s:10.0f} tokens/s  MFU {100 * mfu:5.1f}% of {peak:.0f} TFLOP/s  "
        f"(warm-up {warmup:.1f} s, loss {loss.item():.3f})",
        flush=True,
    )


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=60.0, help="total timed seconds, split over the runs")
    ap.add_argument("--peak-tflops", type=float, default=989.0)
    ap.add_argument("--batch-sizes", default="32,16,8,4")
    args = ap.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    print(f"torch {torch.__version__} on {torch.cuda.get_device_name()}; "
          f"GPT-2 124M, T={T}, bf16 autocast, fused AdamW; {flops_per_token() / 1e9:.3f} GFLOP/token")
    per_run = args.seconds / 2
    for compiled in (False, True):
        label = "torch.compile" if compiled else "eager"
        for batch in (int(b) for b in args.batch_sizes.split(",")):
            torch.manual_seed(0)
            model = GPT().cuda()
            opt = torch.optim.AdamW(model.parameters(), lr=6e-4, weight_decay=0.1, fused=True)
            run = torch.compile(model) if compiled else model
            try:
                measure(run, opt, batch, per_run, label, args.peak_tflops)
                break
            except torch.OutOfMemoryError:
                print(f"{label}: batch {batch} does not fit, trying smaller", flush=True)
            finally:
                del model, opt, run
                torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
