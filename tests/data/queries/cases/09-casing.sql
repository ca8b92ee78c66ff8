select * from HYDRA_CLIENT where ID = 'c2';
