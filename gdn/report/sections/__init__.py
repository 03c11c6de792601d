"""Report sections, in page order: the verdict first, the evidence next, the bookkeeping last.
Each module has `build(con, ctx) -> dict | None` returning {"id", "title", "html"} and
optionally "nav" (a short name for the navigation bar); None means it has nothing to show
for this tier."""

SECTION_MODULES = [
    "claims",
    "transfer",
    "evaluation",
    "curves",
    "groups",
    "plan",
    "coord",
    "performance",
    "runs",
    "data",
    "overview",
]
