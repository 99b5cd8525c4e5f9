"""Process helpers: the training worker's allocator setting does what it claims."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.service import Service

REPO = Path(__file__).resolve().parents[2]

# A few training steps of a small GPT-2 in a fresh interpreter; prints the page faults of the last ten.
_TRAIN_STEPS = """
import resource, sys, torch
from transformers import GPT2Config, GPT2LMHeadModel
from selfsup.processes import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
torch.set_num_threads(1)
config = GPT2Config(vocab_size=67, n_positions=64, n_embd=128, n_layer=4, n_head=4, bos_token_id=0, eos_token_id=0)
model = GPT2LMHeadModel(config)
tokens = torch.randint(0, 67, (12, 64))
def step():
    model(input_ids=tokens, labels=tokens).loss.backward()
for _ in range(3):
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    step()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _page_faults(mode: str) -> int:
    out = subprocess.run(
        [sys.executable, "-c", _TRAIN_STEPS, mode], cwd=REPO, capture_output=True, text=True, check=True, timeout=300
    )
    return int(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt is Linux-only")
def test_keeping_freed_memory_spares_the_page_faults_of_every_training_step() -> None:
    default, kept = _page_faults("default"), _page_faults("keep")
    # glibc's defaults hand the step's activations back to the kernel and fault them in again
    # (thousands of faults over ten steps); kept, they are reused.
    assert default > 2_000, default
    assert kept * 3 < default, (kept, default)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt is Linux-only")
def test_the_training_worker_that_selfsup_up_starts_keeps_freed_memory(embedded_service: Service) -> None:
    # `selfsup worker` says so only when it serves the gpu queue and mallopt took the setting.
    log = embedded_service.log_path.read_text(errors="replace")
    assert "selfsup worker: malloc keeps freed memory for training" in log, log[-3000:]
