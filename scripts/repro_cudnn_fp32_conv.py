"""Minimal reproduction for an upstream (PyTorch / cuDNN) report: a strict float32 3x3 convolution
that cuDNN gets wrong. Plain torch only.

Seen 2026-11-28 on an NVIDIA H200, torch 2.11+cu130, cuDNN 9.19: Conv2d 1920->1280, 3x3,
padding 1 on a (16, 1920, 32, 32) input returns 58 % relative error against float64 with TF32
off; with TF32, or with cuDNN disabled, it is right (3e-4, 1e-6).

    python scripts/repro_cudnn_fp32_conv.py [--batch 16 --cin 1920 --cout 1280 --size 32]

Prints the versions and ||out - ref|| / ||ref|| for: strict fp32 (cuDNN), fp32 with TF32
(cuDNN), fp32 with cuDNN disabled; ref is float64 with cuDNN disabled.
"""
import argparse

import torch
import torch.nn.functional as F


def relative_error(out, ref):
    return ((out.double() - ref).norm() / ref.norm()).item()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--cin", type=int, default=1920)
    parser.add_argument("--cout", type=int, default=1280)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--benchmark", action="store_true", help="torch.backends.cudnn.benchmark = True")
    args = parser.parse_args()

    print("torch", torch.__version__, "| CUDA", torch.version.cuda, "| cuDNN", torch.backends.cudnn.version(),
          "|", torch.cuda.get_device_name())
    torch.backends.cudnn.benchmark = args.benchmark
    torch.manual_seed(0)
    x = torch.randn(args.batch, args.cin, args.size, args.size, device="cuda")
    bound = (args.cin * 9) ** -0.5
    w = (torch.rand(args.cout, args.cin, 3, 3, device="cuda") * 2 - 1) * bound
    b = (torch.rand(args.cout, device="cuda") * 2 - 1) * bound

    torch.backends.cudnn.enabled = False
    ref = F.conv2d(x.double(), w.double(), b.double(), padding=1)
    torch.backends.cudnn.enabled = True

    cases = {}
    torch.backends.cudnn.allow_tf32 = False
    cases["fp32, TF32 off (cuDNN)"] = F.conv2d(x, w, b, padding=1)
    torch.backends.cudnn.allow_tf32 = True
    cases["fp32, TF32 on (cuDNN)"] = F.conv2d(x, w, b, padding=1)
    torch.backends.cudnn.enabled = False
    cases["fp32, cuDNN disabled"] = F.conv2d(x, w, b, padding=1)
    torch.backends.cudnn.enabled = True
    torch.cuda.synchronize()
    print(f"Conv2d {args.cin}->{args.cout} 3x3 padding 1 on {tuple(x.shape)}; relative error vs float64:")
    for name, out in cases.items():
        print(f"  {name:<24} {relative_error(out, ref):.2e}")


if __name__ == "__main__":
    main()
