"""HTML report: Jinja2 templates, inline SVG plots, one section module per topic."""
