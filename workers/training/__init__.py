"""The training core: trainer, optimizer, objectives as the trainer drives them, checkpoint artefacts."""
