SELECT*FROM hydra_client WHERE id='c3';
