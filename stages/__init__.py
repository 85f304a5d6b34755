"""The work behind each ``cdred`` command: collect_experts, render_visual, imitate and evaluate expose a
frozen config dataclass and ``run(config, ...) -> Artifact``; package and envs are plain functions;
pipeline chains the stages. The CLI only parses options into these configs and prints the outcome."""
