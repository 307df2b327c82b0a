"""AI result objects (TID 1500 SR, SEG) and their delivery to PACS destinations."""
