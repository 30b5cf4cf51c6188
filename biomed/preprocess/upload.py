"""An uploaded file whose DICOM dataset is parsed once per request, by whoever needs it first.

``load_image`` and ``load_presented`` (``biomed.preprocess.image``) take an ``Upload`` as well as
bytes. Given one, the decoder parses the dataset through ``Upload.dataset`` (or takes the one
parsed before: the DICOM doors parse it first to check its UIDs and SOP class), and once the
pixels are decoded it drops the encoded pixel data (``decoded``). What remains, ``header``, is
the dataset without pixel data that an SR or a DICOM explanation references: no second parse
of the same bytes. Asked to (``identify=True``: the DICOM doors), the decoder also hashes the
decoded pixels as it goes, and ``identity`` is the instance's content identity
(``biomed.preprocess.identity``).

Every cap holds for every decode, whoever parsed: the data elements counted before the first
parse (``dicom_read.read_counted``) are checked again against each caller's
``Limits.max_elements`` (so a decode on the event loop under the handler's smaller inline caps
refuses, as before, a dataset parsed on a thread under the full ones), and pixels, frames,
decoded bytes and the decode budget are checked by the decoder itself. A deflated dataset is
inflated once, under the first parse's ``max_bytes``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydicom.dataset import Dataset, FileDataset

from biomed.preprocess.dicom_read import PIXEL_KEYWORDS, read_counted, too_many_elements
from biomed.preprocess.identity import instance_identity

if TYPE_CHECKING:
    from biomed.preprocess.budget import Limits


class Upload:
    """One uploaded file (DICOM, PNG or JPEG) and, once parsed, its DICOM dataset."""

    def __init__(self, data: bytes, identify: bool = False) -> None:
        self.data = data
        self.identify = identify  # the decoder hashes the decoded pixels (``pixels_sha256``)
        self.pixels_sha256: str | None = None
        self._dataset: Dataset | None = None
        self._elements = 0  # data elements counted before the parse
        self._decoded = False

    @classmethod
    def of(cls, data: bytes | Upload) -> Upload:
        """``data`` itself when it is an ``Upload``, else a new one around the bytes."""
        return data if isinstance(data, Upload) else cls(data)

    def dataset(self, limits: Limits) -> Dataset:
        """The dataset, pixel data still encoded: parsed under ``limits`` the first time (``dicom_read.read``),
        then the same dataset while its element count is within ``limits.max_elements``.

        After ``decoded`` the pixel data is gone, so a second decode of the same upload parses again.

        Raises:
            InputError: as ``dicom_read.read`` (413 past the element cap, 400/415 for bytes that do not parse).
        """
        if self._dataset is None or self._decoded:
            (self._dataset, self._elements), self._decoded = read_counted(self.data, limits), False
        elif self._elements > limits.max_elements:
            raise too_many_elements(limits.max_elements)
        return self._dataset

    def decoded(self) -> None:
        """The decoder is done with the pixels: drop the encoded pixel data and the parser's buffer of the file."""
        ds = self._dataset
        if ds is None:
            return
        for keyword in PIXEL_KEYWORDS:
            if keyword in ds:
                delattr(ds, keyword)
        if isinstance(ds, FileDataset):
            ds.buffer = None  # pydicom keeps the stream it read from: the whole file's bytes
        self._decoded = True

    @property
    def header(self) -> Dataset | None:
        """The dataset as parsed (without pixel data once decoded); None for a PNG or JPEG, or before any parse."""
        return self._dataset

    @property
    def identity(self) -> str | None:
        """The instance's content identity (``biomed.preprocess.identity``) once decoded with ``identify``; else
        None (a PNG or JPEG, or not decoded yet)."""
        if self._dataset is None or self.pixels_sha256 is None:
            return None
        return instance_identity(self._dataset, self.pixels_sha256)
