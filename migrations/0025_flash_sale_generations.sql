-- Flash-sale generations: each start of a sale is a new generation, and units admitted to one
-- go back only to it (a hold released after the sale was restarted does not credit the new
-- sale). Null: a line outside a sale, or admitted before generations existed (then units go
-- back to whatever sale runs, as before).
ALTER TABLE inventory.reservations ADD COLUMN flash_generation text;
ALTER TABLE inventory.flash_give_backs ADD COLUMN generation text;
