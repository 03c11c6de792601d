"""Report sections, in page order. Each module has `build(con, ctx) -> dict | None`
returning {"id", "title", "html"}; None means it has nothing to show for this tier."""

SECTION_MODULES = [
    "overview",
    "plan",
    "claims",
    "transfer",
    "coord",
    "evaluation",
    "curves",
    "performance",
    "runs",
]
