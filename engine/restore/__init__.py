"""Face restoration as A1111 runs it (CodeFormer, GFPGAN): find faces, align each to FFHQ's 512-pixel template,
restore it with the network, paste it back through a soft mask.

`engine.restore.registry.FaceRestorers` resolves restorer names against the models folder and hands out
`FaceRestorer`s whose `restore(image, weight)` any feature can call (txt2img/img2img, ADetailer, a face swapper).
"""
