"""One home for what the project writes: DICOM SR, Parametric Map / Secondary Capture, PNG overlays, VCF, bigWig.

The doors, the CLI and the PACS forwarder all take their outputs from here.
"""
