"""The micro model that the training-loop tests run (`--config.X=Y` overrides of configs/tiny*.py): 2 layers of
width 32, GQA, a 32-token window and one memory layer, so a step compiles and runs in about a second."""

MICRO_MODEL = [
    "--config.model.hidden_size=32",
    "--config.model.intermediate_size=48",
    "--config.model.num_hidden_layers=2",
    "--config.model.num_attention_heads=4",
    "--config.model.num_key_value_heads=2",
    "--config.model.max_position_embeddings=32",
    "--config.model.last_context_length=16",
    "--config.model.mem_layers=(1,)",
]
