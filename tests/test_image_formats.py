"""The one table of image file formats (``scripts/image_formats.py``) and what each entry point reads from it."""

from __future__ import annotations

import pytest


def test_each_entry_point_reads_its_share_of_the_one_table(tmp_path):
    from scripts.data.image_files import file_kind
    from scripts.image_formats import APP_IMAGE_SUFFIXES, CLI_IMAGE_SUFFIXES, IMPORTER_IMAGE_SUFFIXES, suffixes
    from scripts.workflows.inference import list_input_images

    raster, nifti = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}, {".nii", ".nii.gz"}
    assert set(CLI_IMAGE_SUFFIXES) == raster | nifti | {".nrrd", ".mha", ".mhd"}
    assert set(APP_IMAGE_SUFFIXES) == raster | nifti
    assert set(IMPORTER_IMAGE_SUFFIXES) == raster | nifti | {".dcm"}
    assert set(suffixes(file_format="itk")) == {".nrrd", ".nhdr", ".mha", ".mhd"}
    assert [file_kind(f"a{s}") for s in (".PNG", ".nii.gz", ".dcm", ".nrrd")] == ["pil", "nifti", "dicom", None]
    with pytest.raises(ValueError, match="unknown image format 'jpeg2000'"):
        suffixes(file_format="jpeg2000")
    with pytest.raises(ValueError, match="unknown entry point 'viewer'"):
        suffixes(read_by="viewer")
    for name in ("a.mha", "b.nhdr"):
        (tmp_path / name).write_bytes(b"")
    with pytest.warns(UserWarning, match=r"skipping 1 entries that are not image files: b\.nhdr"):
        assert [item["case"] for item in list_input_images(tmp_path)] == ["a"]


def test_the_app_accepts_its_suffixes_longest_first():
    from scripts.monailabel_app.lib.errors import UnsupportedStudyImageError
    from scripts.monailabel_app.lib.names import upload_suffix

    assert upload_suffix("scan.nii.gz") == ".nii.gz"
    assert upload_suffix("photo.tiff") == ".tiff"
    with pytest.raises(UnsupportedStudyImageError, match=r"only image files are accepted \(\.nii\.gz, "):
        upload_suffix("scan.mha")
