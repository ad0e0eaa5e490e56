"""The Leap and WarpGrad papers' multi-shot Omniglot protocol (Flennerhag et al. 2019, 2020), as the
official code runs it (flennerhag/warpgrad src/omniglot/: data.py, model.py, wrapper.py, main.py;
read, not copied).

Tasks (data.py, DataContainer and SubOmniglot)
  * One alphabet per task; its classes are `ways` (20) of its characters, drawn once per alphabet with
    the split seed and kept for the whole run (SubOmniglot shuffles the alphabet's characters and keeps
    the first num_classes). Only alphabets with at least `ways` characters take part (DataContainer's
    filter); they are shuffled with the seed, the first `train_alphabets` are meta-training
    (num_pretrain: the paper sweeps 1-25), the next `test_alphabets` (TEST = 10) meta-test, the rest
    validation. Meta-test alphabets are never seen in meta-training.
  * Per character, the first 5 of its 20 drawings (file order; the prepared cache keeps it) are the
    held-out test images (HOLD_OUT = 5), the other 15 the training images.
  * Adaptation: `steps` SGD steps (100), each on a mini-batch of `batch_size` (task_batch_size 128)
    training images drawn at random (RandomSampler). Every meta-training image is randomly
    transformed each time it is drawn, RandomAffine((0, 360), (0.2, 0.2), (0.8, 1.2)) (data.py's
    DEFAULT_TRANSFORM); test-time images never are (the issue's protocol; data.py passes the same
    transform to its test alphabets too -- a deviation, documented here).
  * Pixels (`dataset`, `background`): the official images are resize.py's `im.resize((28, 28),
    LANCZOS)` of the 1-bit PNGs, which Pillow carries out with nearest neighbour on mode "1" (binary
    pixels: our `omniglot-binary` cache), read by torchvision's Omniglot (`convert("L")`) and
    ToTensor: background 1, strokes 0, and RandomAffine's fill (0) is stroke-coloured (black wedges
    where rotation or translation uncovers the frame). PAPER runs that (`dataset: omniglot-binary`,
    `background: 1`). The default, `background: 0`, is the cache's own polarity (strokes 1 on 0),
    where the fill is background; with `dataset: omniglot`, grey Lanczos edges.
  * Meta-batch: `meta_batch` (20) tasks, the training alphabets in a freshly shuffled cycle
    (DataContainer.train); `meta_steps` (1000) meta-steps.
  * Evaluation: for every test alphabet, adapt from the meta-learned start on its training images
    (BatchNorm in train mode, running statistics reset first, as model.init_adaptation), then
    classify its 100 held-out images in eval mode (running statistics), as wrapper.run_task.
Network: models.OmniConv (model.py); warp layers as main.py's defaults (algorithms/warpgrad.py).
Meta-optimisers: plain SGD, lr 0.1 (main.py's outer_kwargs) for Leap and Reptile; Warp-Leap with
warpgrad.py's `meta_update: per_point` (updaters.py) and its meta-objective's step as utils.py's `step`
(`inner_grad: detached`); Leap's and Warp-Leap's paths end at the point before the last step, as
wrapper.py's run_batches feeds them (`final_point: false`; see PAPER). Baselines (wrapper.py, run_multi.py): MAML (second
order, 5 training steps, outer SGD lr 0.5; maml.py adapts on a fresh mini-batch per step through
`MiniBatchObjective.draw`; its meta-objective the training alphabet's held-out drawings, augmented),
first-order MAML as _FOWrapper (100 steps, outer lr 0.5: the gradient of the last training mini-batch
before the last step, `meta_training_task`), `ft` (pretraining by SGD on the training alphabets' mixed
mini-batches, then fine-tuning; `head: shared`, PAPER's, as the official code runs it: model.py's
multi-headed Linear is `nn.ModuleList([_linear_factory()] * NUM_CLASSES)`, the same Linear in every
slot, so every alphabet trains one head, and FtWrapper.run_tasks never calls init_adaptation at test,
so fine-tuning starts from the pretrained head; the default `per_alphabet` is the multi-headed design
the name suggests: a head per training alphabet, a fresh head at test) and `scratch` (the
official `no`, renamed as YAML reads a key `no` as false: training each test task from the seeded
initialisation). MAML and FOMAML test with the benchmark's steps (100, the official task_val_steps),
as every method.

Pipeline: a benchmark with `task: alphabets` (params.yaml's paper profile: `omniglot-alphabets`, the
settings of settings.PAPER) runs through `metalearn split` (tasks.make_episodes: the alphabet split),
`metalearn train` (train.train: resumable) and `metalearn evaluate` (evaluate.evaluate: one episode per
test alphabet), which dispatch here (metalearn.families); `python -m metalearn.alphabets` runs the same
functions in one command.

  tasks.py     alphabets as tasks: the split, a task's drawings, augmentation, mini-batches, what a
               meta-step sees of a training alphabet, the saved split (`metalearn split`)
  train.py     each method's learner, the meta-batches, the multi-headed pretraining step, the loop
  evaluate.py  adaptation and accuracy on the test alphabets
  settings.py  the official settings (PAPER) and CPU-sized ones
  __main__.py  `python -m metalearn.alphabets`: split, train and evaluate in one command

Tasks run one at a time here (`parallel_tasks` off): the BatchNorm running statistics are the
module's own buffers and mini-batches and transforms draw from torch's generator.
"""
