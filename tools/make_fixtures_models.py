def models_fixture(save, root): pass
