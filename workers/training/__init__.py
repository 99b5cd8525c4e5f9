"""The training core: trainer, optimizer, checkpoint artefacts; the objectives live in `models/objectives/`."""
