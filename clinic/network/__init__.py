"""Known DICOM application entities (remote AEs) and what each may do."""
