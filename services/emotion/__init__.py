"""EmotionService: scores a text's emotions over the eleven labels of DESIGN.md."""
