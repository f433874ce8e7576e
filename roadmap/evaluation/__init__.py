"""Downstream evaluation: COCO detection/instance-segmentation AP (`coco`) and semantic-segmentation
mIoU (`segmentation`)."""
