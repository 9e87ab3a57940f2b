"""`model_info` runtime info in every IR, in the form OpenVINO Model API reads.

Model API's `create_model` configures its wrapper from the IR's
rt_info["model_info"]: the wrapper (model_type), the labels, and the
preprocessing it applies before inference. Our IRs take BGR 0..255 NCHW
with the normalisation inside the graph, which is what Model API feeds when
told not to reverse channels and to subtract 0 and divide by 1. Labels are
one string separated by spaces, so a class name's own spaces become '_'.
The keys Model API does not know (input_description, output_description,
source) are for people and tools reading the IR.
"""


def model_info(config, output_description):
    """{key: str}: the model_info entries for an IR of this config."""
    inp = config.converted_input
    # Model API reads images as BGR; reverse_input_channels flips them first
    reverse = "False" if inp.color == "BGR" else "True"
    return {
        "model_type": "Segmentation",
        "labels": " ".join(name.replace(" ", "_") for name in config.class_names),
        "layout": f"{inp.name}:NCHW",
        "reverse_input_channels": reverse,
        "mean_values": "0 0 0",
        "scale_values": "1 1 1",
        "resize_type": "standard",
        "input_description": f"{inp.name}: float32 [{', '.join(map(str, inp.shape))}], {inp.color}, pixel values "
                             f"0..255; channel order and {config.normalisation_text()} are inside the model",
        "output_description": output_description,
        "source": f"{config.name} (" + ("PaddleSeg release-2.3" if config.arch == "ocrnet" else
                                        "a PaddleSeg inference model") + "), converted by ocrnet-convert",
    }


def class_map_description(config):
    out = config.converted_output
    return f"{out.name}: int32 [1, H, W], the class index (0..{config.num_classes - 1}) of each pixel"


def set_model_info(model, info):
    for key, value in info.items():
        model.set_rt_info(value, ["model_info", key])
    return model
