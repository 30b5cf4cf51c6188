"""Synthetic demo data sets: real DICOM files, DNA with planted JASPAR motifs, and a genome with planted motifs and variants."""
