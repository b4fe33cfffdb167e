#!/usr/bin/env bash
# Creates everything kb needs on a fresh machine of this kind: system packages, .venv, default models.
# Idempotent: a second run only checks. Used by `make setup` (and so by `make run`, `make test` and .ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3

# System packages: OCR for scanned pages (Chinese too), PDF rasterising, file-type sniffing, document converters.
# pandoc (+ its data files): RTF, RST, Org, EPUB. LibreOffice without GUI: legacy .doc/.ppt and ODT (converted to
# .docx/.pptx; pandoc 2.17's sandbox cannot write .docx). ~430 MB installed, ~30 s.
APT_PACKAGES=(tesseract-ocr tesseract-ocr-chi-sim poppler-utils libmagic1
  pandoc pandoc-data libreoffice-writer-nogui libreoffice-impress-nogui)
# `make test` drives the web page in a real browser (Playwright with Debian's Chromium; nothing is downloaded), with
# a small CJK font (WenQuanYi Micro Hei, ~5 MB) so that Chinese text renders in it (and its screenshots) as glyphs.
# The deployment files are checked by the tools that read them (tests/unit/test_deploy_compose.py): Debian's
# docker-compose (`config` needs no engine), haproxy (-c) and prometheus (for promtool; nothing is started).
if [ "${1:-}" = "--with-browser" ]; then
  APT_PACKAGES+=(chromium fonts-wqy-microhei docker-compose haproxy prometheus)
fi
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if ((${#missing[@]})); then
  echo "==> apt-get install ${missing[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# pip names every local index directory that lacks a package ("... is ignored"): noise, not a problem.
pip_quiet() { .venv/bin/pip "$@" 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; }; return "${PIPESTATUS[0]}"; }

stamp=.venv/.kb-setup
inputs=$(cat requirements/*.txt pyproject.toml deploy/setup.sh deploy/en_core_web_sm_shim/pyproject.toml | sha256sum | cut -c1-16)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$inputs" ]; then
  echo "==> creating .venv"
  [ -x .venv/bin/python ] || "$PY" -m venv .venv
  pip_quiet install -q --upgrade pip
  pip_quiet install -q -r requirements/main.txt -r requirements/test.txt
  pip_quiet install -q --no-deps -r requirements/nodeps.txt
  pip_quiet install -q --no-deps ./deploy/en_core_web_sm_shim
  pip_quiet install -q --no-deps -e .
  # PyPI's torchvision/torchaudio/torchcodec are CUDA builds that break `import vllm` beside the CPU torch;
  # text models need none of them, and triton is unused on CPU.
  .venv/bin/pip uninstall -q -y torchvision torchaudio torchcodec triton 2>/dev/null || true
  echo "$inputs" > "$stamp"
fi

echo "==> preparing default models"
.venv/bin/kb prepare
