"""The ``caril`` command line: one module per subcommand, each with a typed ``Args`` dataclass and ``run``."""
