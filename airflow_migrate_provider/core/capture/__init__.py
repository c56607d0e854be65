"""Change capture and replay (dual-write): triggers record writes to the old table, a replay applies them to the
new one; the cutover switches the application over (see core/kinds/dual_write.py and core/kinds/cutover.py)."""
