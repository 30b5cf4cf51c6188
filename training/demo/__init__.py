"""Synthetic demo data sets: real DICOM files and DNA with planted JASPAR motifs."""
