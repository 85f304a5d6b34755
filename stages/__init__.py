"""Pipeline stages: each module exposes ``run(config, ...) -> artifact`` and a config dataclass with presets."""
