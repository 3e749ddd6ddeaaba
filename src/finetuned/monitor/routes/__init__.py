"""One APIRouter per area of the monitor."""
