"""Provenance of a raw folder: its README as the description, and the citations and licences of the public sources
it names (QaTa-COV19, LViT, MosMedData, MoNuSeg, Kvasir-SEG, medvlsm).
"""

from pathlib import Path

import datasets

from .checks import (
    FEATURES,
)


# (keyword found in a source README or layout name, licence note, BibTeX) for the public sources of TMCA's datasets.
_KNOWN_SOURCES = (
    (
        "qata",
        "QaTa-COV19 (Qatar University, Tampere University): the licence of the original release (not verified here).",
        "@article{degerli2021covid,\n"
        "  title={COVID-19 infection map generation and detection from chest X-ray images},\n"
        "  author={Degerli, Aysen and Ahishali, Mete and Yamac, Mehmet and Kiranyaz, Serkan and Chowdhury, Muhammad "
        "E. H. and Hameed, Khalid and Hamid, Tahir and Mazhar, Rashid and Gabbouj, Moncef},\n"
        "  journal={Health Information Science and Systems},\n  volume={9},\n  pages={15},\n  year={2021}\n}",
    ),
    (
        "lvit",
        "LViT text annotations: the licence of the LViT release (github.com/HUANGLIZI/LViT; not verified here).",
        "@article{li2023lvit,\n  title={LViT: Language meets Vision Transformer in Medical Image Segmentation},\n"
        "  author={Li, Zihan and Li, Yunxiang and Li, Qingde and Zhang, You and Wang, Puyang and Guo, Dazhou and "
        "Lu, Le and Jin, Dakai and Hong, Qingqi},\n"
        "  journal={IEEE Transactions on Medical Imaging},\n  year={2023}\n}",
    ),
    (
        "mosmed",
        "MosMedData: the licence of the original release (not verified here).",
        "@article{morozov2020mosmeddata,\n"
        "  title={MosMedData: Chest CT Scans With COVID-19 Related Findings Dataset},\n"
        "  author={Morozov, S. P. and others},\n  journal={arXiv preprint arXiv:2005.06465},\n  year={2020}\n}",
    ),
    (
        "monuseg",
        "MoNuSeg: the licence of the challenge release (not verified here).",
        "@article{kumar2017dataset,\n  title={A Dataset and a Technique for Generalized Nuclear Segmentation for "
        "Computational Pathology},\n  author={Kumar, Neeraj and Verma, Ruchika and Sharma, Sanuj and Bhargava, "
        "Surabhi and Vahadane, Abhishek and Sethi, Amit},\n  journal={IEEE Transactions on Medical Imaging},\n"
        "  volume={36},\n  number={7},\n  pages={1550--1560},\n  year={2017}\n}",
    ),
    (
        "kvasir",
        "Kvasir-SEG (Simula): research and educational use, with citation (not verified here).",
        "@inproceedings{jha2020kvasir,\n  title={Kvasir-SEG: A Segmented Polyp Dataset},\n  author={Jha, Debesh and "
        "Smedsrud, Pia H. and Riegler, Michael A. and Halvorsen, P{\\aa}l and de Lange, Thomas and Johansen, Dag and "
        "Johansen, H{\\aa}vard D.},\n  booktitle={MultiMedia Modeling (MMM 2020)},\n  pages={451--462},\n"
        "  year={2020}\n}",
    ),
    (
        "medvlsm",
        "medvlsm prompts (github.com/naamiinepal/medvlsm): MIT licence.",
        "@inproceedings{poudel2024exploring,\n"
        "  title={Exploring Transfer Learning in Medical Image Segmentation using "
        "Vision-Language Models},\n  author={Poudel, Kanchan and Dhakal, Manish and Bhandari, Prasiddha and Adhikari, "
        "Rabin and Thapaliya, Safal and Khanal, Bishesh},\n  booktitle={Medical Imaging with Deep Learning (MIDL)},\n"
        "  year={2024},\n  note={arXiv:2308.07706}\n}",
    ),
)


def source_info(root: Path, layout: str, prompt_key: str) -> datasets.DatasetInfo:
    """Provenance for a raw folder: its README as description, citations and licences of the sources it names."""
    readme = root / "README.md"
    description = readme.read_text(encoding="utf-8", errors="replace").strip() if readme.is_file() else ""
    known = [source for source in _KNOWN_SOURCES if source[0] in (description + " " + layout).lower()]
    if layout == "medvlsm":
        description = f"{description}\n\nReports: medvlsm prompt {prompt_key}.".strip()
    return datasets.DatasetInfo(
        description=description,
        citation="\n\n".join(source[2] for source in known),
        license="\n".join(source[1] for source in known),
        features=FEATURES,
    )
