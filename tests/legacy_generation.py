"""The legacy API's /generate example body, as the request model hands it to the engine (typed, correctly spelled)."""

LEGACY_BODY = {
    "number_backgrounds": 2,
    "training_transforms": ["brightness", "color"],
    "testing_transforms": ["gaussian", "contrast"],
    "scales": [500, 490],
    "flip_vertically": True,
    "flip_horizontally": True,
    "flip_both": True,
    "angles": [15.0, -15.0, 30.0, -30.0],
    "test_angles": [5.0, -5.0, 20.0, -20.0, 35.0, -35.0],
    "apply_occlusion": False,
    "occlusion_window": 0,
    "occlusion_stride": 0,
    "apply_center_crop": False,
    "center_crop_windows": [112, 56],
}
