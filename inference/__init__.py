"""MONAI models: bundle registry, preprocessing, prediction, explanations, demo training.

Arrays in, typed results out (DESIGN.md §3, §7). The entry points:

- :func:`inference.dicom_io.load_image` — a DICOM file → :class:`inference.types.ImageInput`
  (display-ready float32 in [0, 1]), or :class:`inference.errors.ImageLoadError`;
- :meth:`inference.registry.ModelRegistry.from_directory` — every bundle of a models folder, loaded
  once; ``select(modality, body_part, view_position)`` routes an image to its models and
  ``LoadedModel.predict(image)`` returns a :class:`inference.types.ModelResult` with Grad-CAM heatmaps;
  a broken bundle is a :class:`inference.errors.BundleError` naming the file;
- :func:`inference.demo.train.train_demo` — the seeded synthetic demo model (``cxr-demo``);
- :func:`inference.dicom_io.load_volume` — a CT series → :class:`inference.types.VolumeInput` (HU,
  slices ordered by position); ``SegmentationModel.predict_volume`` (3D bundles, ``model.is_volumetric``)
  returns a mask aligned to the series' SOP instances and the nodule measurements;
- :func:`inference.demo.ct_train.train_ct_demo` — the seeded CT lung-nodule demo model (``ct-nodule-demo``).

Nothing here imports the database, the broker, the protocol libraries or the domain.
"""
