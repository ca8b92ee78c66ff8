SELECT * FROM unnest(ARRAY['x', 'y']) WITH ORDINALITY AS u(letter, pos);
