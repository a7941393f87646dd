"""Evaluation of trained models: MDM likelihood estimators and sampler, the lm-eval model class,
`megadlm eval` and `megadlm generate`. Everything runs on a Hugging Face export (checkpoints are
exported first), so a score always belongs to weights that standard tools can load too."""
