"""Training: objectives by name (`losses.LOSSES`), one stage (`stage`), optimisers, checkpoints,
metrics, and the runner that chains a recipe's stages. A new stage is a config in configs/stages/
naming its loss, task and trainable groups."""
