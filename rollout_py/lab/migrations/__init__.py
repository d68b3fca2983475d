"""The lab's schema migrations (expand, backfill, contract) that ``lab up --db`` copies."""
