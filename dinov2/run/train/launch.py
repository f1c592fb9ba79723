"""The SLURM launcher's work once its options are parsed: check the run's config and files, submit the job."""

import argparse
import logging

from dinov2.logging import setup_logging
from dinov2.run.submit import check_args, submit_jobs
from dinov2.run.train.train import Trainer
from dinov2.utils.config import get_cfg_from_args
from dinov2.utils.validation import check_run_inputs

logger = logging.getLogger("dinov2")


def submit(args: argparse.Namespace) -> None:
    """Check the options, the config and the files it names, then submit one training job.

    With ``--local``, waits for every process of the job; raises with the job's error log if one failed.
    """
    check_args(args)
    # The checks the job itself starts with, run before anything is queued.
    cfg = get_cfg_from_args(argparse.Namespace(**vars(args)))
    check_run_inputs(cfg, need_pretrained=not (args.eval_only and cfg.MODEL.WEIGHTS))
    # Console only: the job writes its own log.txt in the output directory.
    setup_logging()
    job = submit_jobs(Trainer, args, name="sdsh:train")
    if args.local:
        job.results()
        logger.info("Local job %s finished", job.job_id)
