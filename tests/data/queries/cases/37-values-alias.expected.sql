SELECT n, word FROM (VALUES (1, 'one'), (2, 'two')) AS v(n, word);
