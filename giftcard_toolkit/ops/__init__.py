"""What ops use: the forms and console (``forms``), bulk fixes from CSV (``bulk``), the
operations both send (``operations``) and the audit log (``audit``)."""
