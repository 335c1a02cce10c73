"""Console views: one module per area, each an APIRouter (console.app.VIEWS lists them)."""
