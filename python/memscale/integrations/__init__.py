"""Callbacks for the trainers users already run: ``memscale.integrations.transformers``
(Hugging Face ``Trainer``) and ``memscale.integrations.lightning`` (PyTorch Lightning).
Each wraps the model the trainer trains with ``memscale.wrap`` when training begins and
unwraps it when training ends. Import the submodule of the trainer you use; this package
imports neither library."""
